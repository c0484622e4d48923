"""sends whose outcome could not be recorded, counted per delivery

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- A send reached its provider but its window could not record the outcome (it
        -- rolled back for a reason other than the database being away, or the row refused
        -- even `failed`): the delivery's `attempts` did not count it. Counted here, in a
        -- transaction of its own, so that attempts + sends never pass DELIVERY_MAX_ATTEMPTS
        -- (jobs/delivery.py); folded into `attempts` by the window that next records the
        -- delivery. Empty but for deliveries that met a bug or a refusing database.
        CREATE TABLE delivery_unrecorded_sends (
            run_id      uuid NOT NULL,
            position    integer NOT NULL,
            sends       integer NOT NULL,
            last_error  text NOT NULL,
            sent_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, position)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE delivery_unrecorded_sends")
