"""Package discovery (metadata lives in pyproject.toml).

cli/, exporters/ and calibration/ sit at the top of the repository (the design card's layout) but install
inside the gemdeploy namespace, so no generic top-level module lands in site-packages. Every package under
them is found automatically: a new subpackage can never be left out of the wheel.
"""

from setuptools import find_packages, setup

NAMESPACED = {"gemdeploy": "gemdeploy", "gemdeploy.cli": "cli", "gemdeploy.exporters": "exporters",
              "gemdeploy.calibration": "calibration"}

packages = []
for package, folder in NAMESPACED.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=NAMESPACED, package_data={"gemdeploy": ["py.typed"]})
