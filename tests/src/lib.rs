//! End-to-end tests of cnm live in `tests/`; this library is empty.
