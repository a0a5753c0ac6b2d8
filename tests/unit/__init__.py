"""Unit tests: sans-IO codecs, tables and pure state, without sockets."""
