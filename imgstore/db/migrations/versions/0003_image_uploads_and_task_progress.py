"""image upload slots and task progress

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('image_upload',
    sa.Column('image_uuid', sa.String(length=32), nullable=False),
    sa.Column('backup_storage_uuid', sa.String(length=32), nullable=False),
    sa.Column('api_id', sa.String(length=32), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('token_sealed', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('node', sa.String(length=64), nullable=True),
    sa.Column('create_date', sa.DateTime(), nullable=False),
    sa.Column('last_op_date', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['backup_storage_uuid'], ['backup_storage.uuid'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_uuid'], ['image.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_uuid'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('image_upload', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_upload_backup_storage_uuid'), ['backup_storage_uuid'], unique=False)

    op.create_table('task_progress',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('api_id', sa.String(length=32), nullable=False),
    sa.Column('task_uuid', sa.String(length=32), nullable=False),
    sa.Column('parent_uuid', sa.String(length=32), nullable=True),
    sa.Column('task_name', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('content', sa.String(length=255), nullable=True),
    sa.Column('arguments', sa.Text(), nullable=True),
    sa.Column('opaque', sa.Text(), nullable=True),
    sa.Column('time', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('api_id', 'task_uuid')
    )
    with op.batch_alter_table('task_progress', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_progress_api_id'), ['api_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('task_progress', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_progress_api_id'))
    op.drop_table('task_progress')
    with op.batch_alter_table('image_upload', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_upload_backup_storage_uuid'))
    op.drop_table('image_upload')
