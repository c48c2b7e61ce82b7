"""Tests of skipenv.tables (a package, so that test files of the same name in other folders stay distinct)."""
