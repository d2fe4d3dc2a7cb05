"""Attack, boundary and fuzz tests of the server (issue 8, security part)."""
