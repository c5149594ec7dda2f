# tenantkit: `make demo` brings up the seed's three tenants; `make test` runs every test.
# Both do all the set-up a fresh Debian/Ubuntu machine needs (as root).
PYTHON ?= python3
TENANT := $(PYTHON) tools/tenant

.PHONY: help deps engine images host-services demo demo-down test unit integration bench

help:
	@echo "make demo       set up everything, start tenants acme, liberty and zed, print their URLs"
	@echo "make demo-down  stop the demo stack (data is kept)"
	@echo "make test       set up everything and run unit and integration tests"
	@echo "make unit       unit tests only (no Docker needed)"
	@echo "make bench      print the benchmark figures"

deps:
	$(PYTHON) -m pip install -q -e '.[test]'

engine:
	tools/setup-docker

images: engine
	image/offline/prepare.sh

host-services:
	tools/setup-host-services

demo: deps images
	@[ -d tenants/acme ]    || $(TENANT) new acme    --host acme.localhost    --title "ACME Inc"
	@[ -d tenants/liberty ] || $(TENANT) new liberty --host liberty.localhost --title "Liberty Ltd"
	@[ -d tenants/zed ]     || $(TENANT) new zed     --host zed.localhost     --title "Zed & Sons"
	$(TENANT) up --all
	@echo
	@$(TENANT) list
	@echo
	@echo "Try: curl -H 'Host: acme.localhost' http://127.0.0.1:8080/   (or open http://acme.localhost:8080/)"

demo-down:
	$(TENANT) down --all

test: deps images host-services
	$(PYTHON) -m pytest tests

unit: deps
	$(PYTHON) -m pytest tests/unit

integration: deps images host-services
	$(PYTHON) -m pytest tests/integration

bench: deps images host-services
	$(PYTHON) bench/foundation.py
	$(PYTHON) bench/proxy.py
	$(PYTHON) bench/lifecycle.py
	$(PYTHON) bench/deploy.py
	$(PYTHON) bench/faults.py
	$(PYTHON) bench/density.py
	$(PYTHON) bench/memory.py
	$(PYTHON) bench/schedule.py
