"""A skipped test checks nothing: every run ends by naming each skipped test and why
(conftest.pytest_terminal_summary), e.g. the QNN HTP tests where onnxruntime-qnn cannot load."""

from pathlib import Path

pytest_plugins = ["pytester"]


def test_skipped_tests_are_named_with_their_reason(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile("""
        import pytest

        @pytest.mark.skipif(True, reason="QNN HTP backend unavailable here: simulated")
        def test_htp():
            pass

        def test_runs():
            pass
    """)
    res = pytester.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, skipped=1)
    res.stdout.fnmatch_lines(["*! 1 TEST(S) SKIPPED: what they check was NOT tested in this run !*",
                              "NOT TESTED (1): QNN HTP backend unavailable here: simulated",
                              "*::test_htp"])


def test_a_run_without_skips_prints_no_banner(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile("def test_runs():\n    pass\n")
    res = pytester.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert "SKIPPED" not in res.stdout.str()
