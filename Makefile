# The two commands a new user needs: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-10)
DEMO_LAKE ?= demo-lake

.PHONY: install demo test lint bench java dicom-tools clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# Spark (tests and --engine spark) needs a Java runtime.
java:
	@command -v java >/dev/null 2>&1 || { \
		echo "installing a Java runtime for Spark"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless; }

# Real DICOM peers for the tests: dciodvfy (IOD validation, dicom3tools), DCMTK's network tools
# and an Orthanc PACS (started by the tests on loopback ports, never as a service).
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 && command -v storescu >/dev/null 2>&1 && command -v Orthanc >/dev/null 2>&1 || { \
		echo "installing dicom3tools, dcmtk and orthanc"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dicom3tools dcmtk orthanc; }

demo: install
	$(PY) -m voxlake.demo --lake $(DEMO_LAKE)

lint: install
	$(PY) -m ruff check voxlake tests bench scripts

test: install java dicom-tools lint
	$(PY) -m pytest

bench: install java dicom-tools
	$(PY) bench/ingest_bench.py
	$(PY) bench/synth_scale_bench.py
	$(PY) bench/dimse_bench.py

clean:
	rm -rf $(VENV) $(DEMO_LAKE) demo-data bench/.work
