"""the digest CalculateImageHash computed, kept on the image's ref (issue 15)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 21:00:00

No digest is computed while an image is written any more: CalculateImageHash reads the
RBD image back and keeps its result (algorithm and hex value) on the ref it read.
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('image_backup_storage_ref', sa.Column('hash_algorithm', sa.String(16), nullable=True))
    op.add_column('image_backup_storage_ref', sa.Column('hash_value', sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('image_backup_storage_ref') as batch:
        batch.drop_column('hash_value')
        batch.drop_column('hash_algorithm')
