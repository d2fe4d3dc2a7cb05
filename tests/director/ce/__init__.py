"""Tests of the CE backends (`director/ce/`), one file per backend (or subject), topic and kind
of test: `test_<kind>[_<topic>]_<unit|fake|live|e2e>.py`

    _unit   the backend's pure parts, no CE at all
    _fake   the backend against a fake CE (what a real one cannot be made to do)
    _live   the backend against the real CE (test pool, A-REX, local processes)
    _e2e    the director and the real server through the real CE, pilots running
"""
