"""campaigns, runs, deliveries, suppressions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE campaigns (
            id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            brand_id    text NOT NULL,
            name        text NOT NULL,
            channel     text NOT NULL CHECK (channel IN ('email', 'sms')),
            status      text NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'active', 'archived')),
            sender      text,
            subject     text,
            body        text NOT NULL,
            created_by  text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX campaigns_brand_id_created_at_idx ON campaigns (brand_id, created_at, id);

        CREATE TABLE runs (
            id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            campaign_id      uuid NOT NULL REFERENCES campaigns (id),
            brand_id         text NOT NULL,
            status           text NOT NULL DEFAULT 'queued'
                             CHECK (status IN ('queued', 'running', 'completed', 'cancelled')),
            total_recipients integer NOT NULL CHECK (total_recipients > 0),
            sent_count       integer NOT NULL DEFAULT 0,
            failed_count     integer NOT NULL DEFAULT 0,
            skipped_count    integer NOT NULL DEFAULT 0,
            started_at       timestamptz,
            completed_at     timestamptz,
            created_by       text NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            CHECK (sent_count >= 0 AND failed_count >= 0 AND skipped_count >= 0),
            CHECK (sent_count + failed_count + skipped_count <= total_recipients)
        );
        CREATE INDEX runs_campaign_id_created_at_idx ON runs (campaign_id, created_at, id);

        -- One row per recipient of a run, written by publish with COPY. Deliberately no
        -- foreign key to runs (a per-row RI trigger doubles the COPY) and no secondary
        -- index: publish writes the run and its deliveries in one transaction, and the
        -- primary key serves every access (a job reads its run's position range).
        CREATE TABLE deliveries (
            run_id              uuid NOT NULL,
            position            integer NOT NULL,
            person_id           text NOT NULL,
            recipient           text NOT NULL,
            status              text NOT NULL
                                CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
            reason              text,
            attempts            integer NOT NULL DEFAULT 0,
            last_error          text,
            provider_message_id text,
            sent_at             timestamptz,
            updated_at          timestamptz,
            PRIMARY KEY (run_id, position)
        );

        -- Addresses a brand must never send to again; `address` is stored normalised
        -- (e-mail lower-cased), the form publish and the worker compare against.
        CREATE TABLE suppressions (
            brand_id    text NOT NULL,
            address     text NOT NULL,
            reason      text NOT NULL
                        CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (brand_id, address)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE suppressions, deliveries, runs, campaigns")
