"""SMS through Twilio: where a suppression came from, the sends awaiting Twilio's receipt,
brands found by the number they text from (STOP)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

0013 is issue 24's; this one follows whichever revision is the head when both are merged.
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Who put the address on the list: `api` (PUT), `provider:webhook` and
        -- `provider:sendgrid` (their bounces and complaints), `sms_stop` (the recipient
        -- texted STOP), `provider:twilio` (Twilio refused a send: error 21610). A START
        -- lifts only the recipient's own opt-outs (db/suppressions.py). NULL: written
        -- before this revision. No default: adding it rewrites nothing.
        ALTER TABLE suppressions ADD COLUMN source text;

        -- Twilio's sends whose final receipt has not come yet: a status callback names
        -- the message by its sid, and finds its delivery here. A row goes when its final
        -- receipt comes, or AWAITED_RECEIPT_DAYS after the send (the worker's
        -- maintenance): the table holds what is in flight, not the history. (An index on
        -- deliveries.provider_message_id would hold every sent delivery of every provider
        -- for ever, random keys that tripled the record's UPDATE: ADR 0063.) No foreign
        -- key: retention drops partitions of deliveries whole.
        CREATE TABLE awaited_receipts (
            message_id  text PRIMARY KEY,
            run_id      uuid NOT NULL,
            position    integer NOT NULL,
            sent_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX awaited_receipts_sent_at_idx ON awaited_receipts (sent_at);

        -- An inbound STOP names the number it was sent to: the brands whose SMS campaigns
        -- send from it.
        CREATE INDEX campaigns_sms_sender_idx ON campaigns (sender, brand_id)
            WHERE channel = 'sms';
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX campaigns_sms_sender_idx;
        DROP TABLE awaited_receipts;
        ALTER TABLE suppressions DROP COLUMN source;
        """
    )
