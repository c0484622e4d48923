"""campaign priority, shared rate limits, provider pauses

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- high, normal or low: the procrastinate priority of the campaign's runs' jobs.
        -- A constant default adds the column without rewriting the table.
        ALTER TABLE campaigns ADD COLUMN priority text NOT NULL DEFAULT 'normal'
            CHECK (priority IN ('high', 'normal', 'low'));

        -- A brand's own caps, within EMAIL_RATE_LIMIT / SMS_RATE_LIMIT; NULL: none.
        CREATE TABLE brand_rate_limits (
            brand_id          text PRIMARY KEY,
            email_per_second  double precision CHECK (email_per_second > 0),
            sms_per_second    double precision CHECK (sms_per_second > 0),
            updated_at        timestamptz NOT NULL DEFAULT now()
        );

        -- Token buckets shared by every worker process: `tokens` as of `refreshed_at`
        -- (they refill at the limit's rate up to its burst). One row per limit in use,
        -- keyed by channel, or by brand and channel (db/rate_limits.py).
        CREATE TABLE rate_buckets (
            key           text PRIMARY KEY,
            tokens        double precision NOT NULL,
            refreshed_at  timestamptz NOT NULL
        );

        -- A provider that answered 429 with Retry-After: no worker sends to it before
        -- `until`.
        CREATE TABLE provider_pauses (
            provider  text PRIMARY KEY,
            until     timestamptz NOT NULL,
            reason    text NOT NULL
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE provider_pauses;
        DROP TABLE rate_buckets;
        DROP TABLE brand_rate_limits;
        ALTER TABLE campaigns DROP COLUMN priority;
        """
    )
