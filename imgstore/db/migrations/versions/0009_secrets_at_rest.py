"""session ids hashed, export URLs sealed (issue Trust, point 7)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 16:30:00

A session's row is keyed by the sha256 of its uuid (64 hex characters), so the sessions
kept in clear are dropped: their holders log in again. An export URL is kept sealed with
the node's secret key, which a migration does not hold, so the URLs kept in clear are
revoked: they answer 404 and a new ExportImageFromBackupStorage makes a new one. An
image's source ``url`` loses the ``user:password@`` it was added with.
"""
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def _forget_secrets() -> None:
    op.execute('DELETE FROM session')
    op.execute('UPDATE image_backup_storage_ref SET export_url = NULL, export_token = NULL '
               'WHERE export_url IS NOT NULL OR export_token IS NOT NULL')


def _without_credentials(url: str) -> str:
    """imgstore/wire/masking.py's, as of this revision."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if '@' not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit('@', 1)[1]).geturl()


def _strip_url_credentials() -> None:
    image = sa.table('image', sa.column('uuid', sa.String), sa.column('url', sa.String))
    bind = op.get_bind()
    rows = bind.execute(sa.select(image.c.uuid, image.c.url).where(image.c.url.like('%@%'))).all()
    for uuid, url in rows:
        clean = _without_credentials(url)
        if clean != url:
            bind.execute(image.update().where(image.c.uuid == uuid).values(url=clean))


def upgrade() -> None:
    _forget_secrets()
    _strip_url_credentials()
    with op.batch_alter_table('session') as batch:
        batch.alter_column('uuid', existing_type=sa.String(32), type_=sa.String(64), existing_nullable=False)
    with op.batch_alter_table('image_backup_storage_ref') as batch:
        batch.alter_column('export_url', existing_type=sa.String(2048), type_=sa.Text(), existing_nullable=True)


def downgrade() -> None:
    _forget_secrets()  # hashed ids and sealed URLs mean nothing to the older code
    with op.batch_alter_table('image_backup_storage_ref') as batch:
        batch.alter_column('export_url', existing_type=sa.Text(), type_=sa.String(2048), existing_nullable=True)
    with op.batch_alter_table('session') as batch:
        batch.alter_column('uuid', existing_type=sa.String(64), type_=sa.String(32), existing_nullable=False)
