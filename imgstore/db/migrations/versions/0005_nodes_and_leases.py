"""nodes and backup storage leases (several nodes on one database)

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-28 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('node',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('start_date', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_date', sa.DateTime(), nullable=False),
    sa.Column('expire_date', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_node_expire_date'), ['expire_date'], unique=False)

    op.create_table('backup_storage_lease',
    sa.Column('backup_storage_uuid', sa.String(length=32), nullable=False),
    sa.Column('owner_node', sa.String(length=64), nullable=True),
    sa.Column('expire_date', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['backup_storage_uuid'], ['backup_storage.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('backup_storage_uuid')
    )
    with op.batch_alter_table('backup_storage_lease', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_backup_storage_lease_owner_node'), ['owner_node'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('backup_storage_lease', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_backup_storage_lease_owner_node'))
    op.drop_table('backup_storage_lease')
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_expire_date'))
    op.drop_table('node')
