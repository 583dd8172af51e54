# vnetlab — two commands do everything on a fresh Debian/Ubuntu machine:
#   make lab    install what is missing, bring up the default plan, check it, show its nodes
#   make test   the test suite (unit tests; lab tests too when run as root)
SHELL := /bin/sh
# Debian's own Python: a venv made with it also runs unchanged in the Debian test guest (make test-kernel)
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
PLAN ?=
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
SOURCES := pyproject.toml $(shell find emulator netns configs -type f -not -name '*.pyc' 2>/dev/null)
# the lab a plan builds: its 'lab:' name
LAB = $$($(BIN)/vnetlab validate $(PLAN) --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["lab"])')

.PHONY: lab down down-all test test-kernel unit bench install venv clean help vagrant-lab vagrant-down

help:
	@echo "make lab       install, bring up the default plan (PLAN=file.yaml for another), verify, list its nodes"
	@echo "               run again: the running lab is reused when it was built from the same plan"
	@echo "make down      remove the lab that 'make lab' built (PLAN=… for another plan's lab)"
	@echo "make down-all  remove every lab on this machine"
	@echo "make test      run the tests (lab tests need root)"
	@echo "make test-kernel  the lab tests on the kernel XFRM data plane, in a Debian 12 guest under qemu (root)"
	@echo "make bench     measure up/verify/down times, memory and throughput (root)"
	@echo "make vagrant-lab / vagrant-down   the same lab inside a Debian 12 VM (VirtualBox or libvirt)"

install:
	$(SUDO) sh scripts/install.sh

# The venv holds vnetlab installed from a wheel, as users install it (not an editable checkout):
# a module missing from the package fails here and in the tests, not on a user's machine.
$(BIN)/vnetlab: $(SOURCES)
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	rm -rf build/wheel
	$(BIN)/pip wheel -q --no-deps -w build/wheel .
	$(BIN)/pip install -q --force-reinstall --no-deps build/wheel/vnetlab-*.whl
	$(BIN)/pip install -q "$$(ls build/wheel/vnetlab-*.whl)[test]"
	touch $@

venv: $(BIN)/vnetlab

lab: install venv
	$(SUDO) $(BIN)/vnetlab up $(PLAN) --reuse
	@echo
	$(SUDO) $(BIN)/vnetlab verify --name $(LAB)
	@echo
	@$(SUDO) $(BIN)/vnetlab nodes --name $(LAB)
	@echo
	@echo "The lab is up. Work in it as root with the project's environment: sudo -s, then . $(BIN)/activate"
	@echo "Tear down: make down"

down: venv
	$(SUDO) $(BIN)/vnetlab down --name $(LAB)

down-all: venv
	$(SUDO) $(BIN)/vnetlab down --all

test: venv
	@if [ "$$(id -u)" -eq 0 ]; then sh scripts/install.sh --test; fi
	$(BIN)/pytest -q

# The kernel data plane's lab tests in a Debian 12 guest (tests/kernel_guest.py): test infrastructure
# for machines whose own kernel has no ESP, such as CI's. Users run the lab with make lab / vagrant-lab.
test-kernel: venv
	$(SUDO) $(BIN)/python tests/kernel_guest.py

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
