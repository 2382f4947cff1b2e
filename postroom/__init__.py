"""Shared pieces of Postroom: settings, database, tables, events, local infrastructure."""
