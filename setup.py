"""Only here to put ``loli_plugin.pth`` at the root of site-packages (pyproject.toml has the rest).

setuptools has no declarative way to ship a top-level ``.pth`` file; copying it into build_lib is the
mechanism coverage.py and others use. Editable installs (``pip install -e``) do not get it: setuptools
builds their wheel without running build_py's extra outputs, so an editable install has no start-up
hook; run the trainer through ``python -m loli_plugin.launch SCRIPT ...`` there.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "loli_plugin.pth"


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        mapping[os.path.join(self.build_lib, PTH)] = PTH
        return mapping


setup(cmdclass={"build_py": build_py_with_pth})
