"""backup storage trash (issue 16 point 4)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 21:45:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'backup_storage_trash',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('backup_storage_uuid', sa.String(length=32), nullable=False),
        sa.Column('resource_uuid', sa.String(length=32), nullable=True),
        sa.Column('resource_type', sa.String(length=64), nullable=False),
        sa.Column('trash_type', sa.String(length=32), nullable=False),
        sa.Column('install_path', sa.String(length=2048), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=True),
        sa.Column('node', sa.String(length=64), nullable=True),
        sa.Column('create_date', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['backup_storage_uuid'], ['backup_storage.uuid'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_backup_storage_trash_backup_storage_uuid', 'backup_storage_trash',
                    ['backup_storage_uuid'])


def downgrade() -> None:
    op.drop_index('ix_backup_storage_trash_backup_storage_uuid', table_name='backup_storage_trash')
    op.drop_table('backup_storage_trash')
