"""SMS through Twilio: where a suppression came from, deliveries found by the provider's
message id (delivery receipts), brands found by the number they text from (STOP)

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-07

0013 is issue 24's; this one follows whichever revision is the head when both are merged.
"""

from alembic import op

revision = "0014"
down_revision = "0012"
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

        -- A status callback names the message by Twilio's sid, which the record stored as
        -- provider_message_id. Partial: a delivery is indexed once it has an id (at its
        -- record, which rewrites the row anyway: `status` is in deliveries_errors_idx's
        -- predicate, so that update was never HOT), never at the COPY of publish.
        -- Created on every partition, and on the ones made later (ADR 0057).
        CREATE INDEX deliveries_provider_message_id_idx ON deliveries (provider_message_id)
            WHERE provider_message_id IS NOT NULL;

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
        DROP INDEX deliveries_provider_message_id_idx;
        ALTER TABLE suppressions DROP COLUMN source;
        """
    )
