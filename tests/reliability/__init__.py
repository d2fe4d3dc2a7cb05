"""Reliability tests: crashes, faults and load against the real server and director."""
