"""idempotency keys of publish; campaigns listed across brands

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per Idempotency-Key of publish, written in the publish transaction
        -- itself: the key exists exactly when its run does. A campaign belongs to one
        -- brand for life, so (campaign_id, key) alone would be unique; brand_id leads
        -- the key so that a brand's keys sit together and can be inspected as such.
        CREATE TABLE idempotency_keys (
            brand_id     text NOT NULL,
            campaign_id  uuid NOT NULL,
            key          text NOT NULL,
            fingerprint  bytea NOT NULL,  -- sha256 of the canonical request body
            -- Deferred: the key row is written before the run, to claim the key first.
            run_id       uuid NOT NULL
                         REFERENCES runs (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
            created_at   timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz NOT NULL,
            PRIMARY KEY (brand_id, campaign_id, key)
        );
        CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

        -- Listing campaigns for a token of every brand ("*") with no brand filter walks
        -- all campaigns newest first; the (brand_id, created_at, id) index of 0002 serves
        -- the one-brand listings.
        CREATE INDEX campaigns_created_at_idx ON campaigns (created_at, id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX campaigns_created_at_idx;
        DROP TABLE idempotency_keys;
        """
    )
