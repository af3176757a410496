# The two commands a new user needs: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-10)
DEMO_LAKE ?= demo-lake

.PHONY: install demo test lint bench java dicom-tools deid-tools viewer clean

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

# Burned-in text detection for de-identification (voxlake deid --option clean-pixel-data, deid verify).
deid-tools:
	@command -v tesseract >/dev/null 2>&1 || { \
		echo "installing tesseract-ocr"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tesseract-ocr; }

# The OHIF viewer (prebuilt, from npm; pinned) and what the browser tests and the viewer benchmark
# need: Debian's chromium (driven by Playwright, never `playwright install`) and Orthanc's DICOMweb
# plugin as the peer to compare with.
OHIF_VERSION := 3.13.2
OHIF_DIR := .cache/ohif-$(OHIF_VERSION)

viewer: $(OHIF_DIR)/dist/index.html
	@command -v chromium >/dev/null 2>&1 && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
		echo "installing chromium and orthanc-dicomweb"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium orthanc-dicomweb; }

$(OHIF_DIR)/dist/index.html:
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && tar -xzf ohif-app-$(OHIF_VERSION).tgz && mv package/dist dist && rm -rf package ohif-app-$(OHIF_VERSION).tgz
	@test -f $@

demo: install
	$(PY) -m voxlake.demo --lake $(DEMO_LAKE)

lint: install
	$(PY) -m ruff check voxlake tests bench scripts

test: install java dicom-tools deid-tools viewer lint
	$(PY) -m pytest

bench: install java dicom-tools deid-tools viewer
	$(PY) bench/ingest_bench.py
	$(PY) bench/synth_scale_bench.py
	$(PY) bench/dimse_bench.py
	$(PY) bench/dicomweb_bench.py --million
	$(PY) bench/viewer_bench.py
	$(PY) bench/deid_bench.py
	$(PY) bench/ai_bench.py
	$(PY) bench/al_bench.py

clean:
	rm -rf $(VENV) $(DEMO_LAKE) demo-data bench/.work .cache
