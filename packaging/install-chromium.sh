#!/bin/sh
# Installs Debian's chromium for the browser test of the HTML report (tests/test_report.py renders it
# headless). `make test` runs this script, as the Makefile installs the codec headers: when chromium is
# missing and the script runs as root on Debian, it installs the package with apt-get; otherwise it
# prints a warning, and the browser test is skipped with a reason. It never fails the make run.
set -u

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the report's browser test (tests/test_report.py)"
  if (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null; then
    command -v chromium >/dev/null 2>&1 && exit 0
  fi
  echo "warning: apt-get could not install chromium; the report's browser test will be skipped" >&2
  exit 0
fi
echo "warning: install Debian's chromium (apt-get install chromium) for the report's browser test;" \
     "without it the test is skipped" >&2
exit 0
