"""Tests of augment.report (contact sheets, eval figures)."""
