"""zones keep isDefault (issue 16 point 6)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 21:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # zones made before this step are not the default, as ZStack's own upgrade leaves them
    op.add_column('zone', sa.Column('is_default', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('zone') as batch:
        batch.drop_column('is_default')
