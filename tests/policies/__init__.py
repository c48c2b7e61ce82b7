"""Tests of skipenv.policies (a package, so that test files of the same name in other folders stay distinct)."""
