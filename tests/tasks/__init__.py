"""Tests of skipenv.tasks (a package, so that test files of the same name in other folders stay distinct)."""
