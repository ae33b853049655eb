# Developer shortcuts; the README's deploy/setup.sh is the one way to set a machine up.
VENV ?= .venv

.PHONY: setup demo test unit lint fmt bench bench-xen xen-test
setup:
	bash deploy/setup.sh
demo:
	$(VENV)/bin/xvif-ovs lab demo
test:
	$(VENV)/bin/python -m pytest -ra
xen-test:  # boots Xen 4.17 in QEMU and runs tests/realxen inside dom0 (deploy/xen-vm/run.sh)
	XVIF_REALXEN=1 $(VENV)/bin/python -m pytest -ra --confcutdir=tests/realxen tests/realxen
unit:
	$(VENV)/bin/python -m pytest -q tests/unit tests/xenstore
lint:
	$(VENV)/bin/ruff check xvif_ovs tests bench
	$(VENV)/bin/ruff format --check xvif_ovs tests bench
fmt:
	$(VENV)/bin/ruff check --fix xvif_ovs tests bench
	$(VENV)/bin/ruff format xvif_ovs tests bench
bench:
	$(VENV)/bin/pip install -q 'matplotlib>=3.6'  # the bench extra, for report.py's plots
	cd bench && ../$(VENV)/bin/python hotplug.py --sizes 0 100 1000 --repeats 7
	cd bench && ../$(VENV)/bin/python firstpacket.py --sizes 0 100 1000 --repeats 7
	cd bench && ../$(VENV)/bin/python scale.py --sizes 1 100 1000 4000 --changes 9
	cd bench && ../$(VENV)/bin/python dataplane.py
	cd bench && ../$(VENV)/bin/python models.py
	cd bench && ../$(VENV)/bin/python firewall.py --repeats 5
	cd bench && ../$(VENV)/bin/python metrics.py --sizes 100 1000 4000 --repeats 5
	cd bench && ../$(VENV)/bin/python drills.py
	cd bench && ../$(VENV)/bin/python adversarial.py
	cd bench && ../$(VENV)/bin/python soak.py --vifs 1000 --events 100000
	cd bench && ../$(VENV)/bin/python report.py
bench-xen:  # Xen 4.17 in QEMU: xvif-ovs against vif-openvswitch on a real dom0 (about 40 min)
	$(VENV)/bin/pip install -q 'matplotlib>=3.6'  # report.py's plots of the other sections
	cd bench && ../$(VENV)/bin/python realxen.py
	cd bench && ../$(VENV)/bin/python report.py
