"""Passwords out of what we print, log and record: a URL's `user:password@` shows as
`user:***@` (SQLAlchemy's own rendering), wherever a storage or tracking URL can appear (MLflow
params, log lines, error messages, optuna_result.json). For PostgreSQL the password need not be
in a URL at all: libpq reads ~/.pgpass or $PGPASSWORD (`split_password`)."""

from __future__ import annotations

import re

# scheme://user:password@ (the password anything up to the last @ before the host)
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s/'\"]*@")
MASK = "***"


def redact(text: str) -> str:
    """`text` with every URL password masked: postgresql://u:pw@h/db -> postgresql://u:***@h/db."""
    return _CREDENTIALS.sub(rf"\g<1>{MASK}@", text)


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password) for a PostgreSQL URL that carries one, so
    that processes it starts reach the database through libpq's $PGPASSWORD instead of a URL
    in their command lines and configs; any other URL as it is, with None."""
    if not url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        return url, None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password is None:
        return url, None
    return parsed._replace(password=None).render_as_string(hide_password=False), str(parsed.password)
