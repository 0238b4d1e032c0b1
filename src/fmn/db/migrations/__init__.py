"""Alembic migrations of the preferences database (run them with :func:`fmn.db.upgrade`).

A package only so that ``env.py`` ships with the code; Alembic loads the files
itself.  ``versions/`` holds one module per schema revision.
"""
