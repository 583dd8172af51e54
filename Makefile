# vnetlab — two commands do everything on a fresh Debian/Ubuntu machine:
#   make lab    install what is missing, bring up the default plan, check it, show the status
#   make test   the test suite (unit tests; lab tests too when run as root)
SHELL := /bin/sh
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLAN ?=
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: lab down test unit bench install venv clean help vagrant-lab vagrant-down graph

help:
	@echo "make lab     install, bring up the default plan (PLAN=file.yaml for another), verify, show status"
	@echo "make down    remove every lab"
	@echo "make test    run the tests (lab tests need root)"
	@echo "make bench   measure up/verify/down times, memory and throughput (root)"
	@echo "make vagrant-lab / vagrant-down   the same lab inside a Debian 12 VM (VirtualBox or libvirt)"

install:
	$(SUDO) sh scripts/install.sh

$(BIN)/vnetlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/vnetlab

lab: install venv
	$(SUDO) $(BIN)/vnetlab up $(PLAN)
	@echo
	@echo
	$(SUDO) $(BIN)/vnetlab verify
	@echo
	@echo "The lab is up. Explore:   sudo $(BIN)/vnetlab status"
	@echo "                          sudo $(BIN)/vnetlab exec TestVNet1/default -- ping 10.42.0.4"
	@echo "                          sudo $(BIN)/vnetlab exec TestVNet1 -- ip route show table all"
	@echo "Tear down:                make down"

down: venv
	$(SUDO) $(BIN)/vnetlab down --all

test: venv
	@if [ "$$(id -u)" -eq 0 ]; then $(MAKE) -s install; fi
	$(BIN)/pytest -q

unit: venv
	$(BIN)/pytest -q -m "not lab"

bench: install venv
	$(SUDO) $(BIN)/python tests/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

vagrant-lab:
	vagrant up
	vagrant ssh -c 'cd /vagrant && make lab'
	@echo
	@echo "In the VM:  vagrant ssh, then: cd /vagrant && sudo .venv/bin/vnetlab status"
	@echo "Tear down:  make vagrant-down"

vagrant-down:
	vagrant destroy -f
