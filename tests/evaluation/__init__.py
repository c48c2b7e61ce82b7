"""Tests of skipenv.evaluation (a package, so that test files of the same name in other folders stay distinct)."""
