"""indexes for name~= (case-insensitive prefix) on backup_storage and image

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 14:50:00
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TABLES = ('backup_storage', 'image')


def upgrade() -> None:
    # db/query.CaseInsensitiveLike: SQLite's LIKE walks a NOCASE index of the column,
    # PostgreSQL's lower(name) LIKE lower(pattern) a text_pattern_ops index of lower(name)
    for table in TABLES:
        if op.get_context().dialect.name == 'postgresql':
            op.execute(f'CREATE INDEX ix_{table}_name_lower ON {table} (lower(name) text_pattern_ops)')
        elif op.get_context().dialect.name == 'sqlite':
            op.execute(f'CREATE INDEX ix_{table}_name_nocase ON {table} (name COLLATE NOCASE)')


def downgrade() -> None:
    for table in TABLES:
        if op.get_context().dialect.name == 'postgresql':
            op.execute(f'DROP INDEX ix_{table}_name_lower')
        elif op.get_context().dialect.name == 'sqlite':
            op.execute(f'DROP INDEX ix_{table}_name_nocase')
