"""SSH host key fingerprints of mons (issue Trust, point 1)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 16:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # mons added before this step have none: their next contact learns it (first use)
    op.add_column('ceph_backup_storage_mon', sa.Column('ssh_host_key_fingerprint', sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ceph_backup_storage_mon') as batch:
        batch.drop_column('ssh_host_key_fingerprint')
