# Developer shortcuts; the README's deploy/setup.sh is the one way to set a machine up.
VENV ?= .venv

.PHONY: setup demo test unit lint fmt bench
setup:
	bash deploy/setup.sh
demo:
	$(VENV)/bin/xvif-ovs lab demo
test:
	$(VENV)/bin/python -m pytest -ra
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
	cd bench && ../$(VENV)/bin/python drills.py
	cd bench && ../$(VENV)/bin/python adversarial.py
	cd bench && ../$(VENV)/bin/python report.py
