"""indexes for paged queries: (create_date, uuid) on backup_storage and image

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 14:30:00
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every query orders by createDate then uuid (imgstore/db/query.py); without these a
    # page of 20 sorted all 10 000 storages or 100 000 images first
    with op.batch_alter_table('backup_storage', schema=None) as batch_op:
        batch_op.create_index('ix_backup_storage_create_date_uuid', ['create_date', 'uuid'], unique=False)
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.create_index('ix_image_create_date_uuid', ['create_date', 'uuid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.drop_index('ix_image_create_date_uuid')
    with op.batch_alter_table('backup_storage', schema=None) as batch_op:
        batch_op.drop_index('ix_backup_storage_create_date_uuid')
