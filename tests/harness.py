"""Paths, the llc runner and the test runner shared by the Python test
suites. The test runner prints one line per test ("ok NAME", "FAIL NAME: why" or
"skip NAME: why") and returns the suite's exit status.

LLC_BUILD=DIR (set by tests/run for make sanitize) selects the llc and
llc64 binaries in DIR instead of the repository root.
"""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("LLC_BUILD") or ROOT
LLC = os.path.join(BUILD, "llc")
LLC64 = os.path.join(BUILD, "llc64")
WEIGHTS = os.path.join(ROOT, "tracr_weights")
REFERENCE = os.path.join(ROOT, "..", "shared", "tracr_reference")
SVG = "{http://www.w3.org/2000/svg}"
failures = 0   # FAIL lines printed so far by report()


class Skip(Exception):
    """Exception a test raises when it cannot run here, with the reason as its message."""


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_status(result, status, *fragments):
    """Checks a finished llc run's exit status and that its stderr contains each fragment."""
    expect(result.returncode == status,
           f"exit status {result.returncode}, expected {status}; stderr: {result.stderr.strip()[:300]}")
    for fragment in fragments:
        expect(fragment in result.stderr, f"stderr lacks {fragment!r}: {result.stderr.strip()[:300]}")


def llc(*args, binary=LLC, timeout=None):
    """Runs llc with args (converted to strings) and returns the finished process."""
    return subprocess.run((binary,) + tuple(str(a) for a in args), capture_output=True, text=True,
                          timeout=timeout)


def report(name, error=None, skipped=None):
    """Prints the line of one test: skipped, failed with error, or ok."""
    global failures
    if skipped:
        print(f"skip {name}: {skipped}")
    elif error:
        failures += 1
        print(f"FAIL {name}: {error}")
    else:
        print(f"ok {name}")
    sys.stdout.flush()


def run_tests(namespace, suite, tmp=None):
    """Runs every test_* function of namespace (a module's globals()) in name
    order. An unexpected exception fails its test, and the others still run.
    Removes the folder tmp afterwards. Returns 1 when a test failed, else 0."""
    if not os.path.exists(LLC):
        print(f"FAIL {suite}: {LLC} is not built (run make)")
        return 1
    tests = sorted((name, fn) for name, fn in namespace.items() if name.startswith("test_") and callable(fn))
    for name, fn in tests:
        name = name[5:].replace("_", " ")
        try:
            fn()
        except Skip as why:
            report(name, skipped=str(why))
        except AssertionError as err:
            report(name, str(err))
        except Exception as err:  # noqa: BLE001  (a crash in one test must not hide the others)
            report(name, f"{type(err).__name__}: {err}")
        else:
            report(name)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0
