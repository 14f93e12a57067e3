"""Print the project's requirements, with those of the extras named, one per line:
`python3 requirements.py pyproject.toml ml cpu-llm`. Image builds install them in a layer of
their own, before the sources, so a code change does not reinstall the dependencies."""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = project.get("optional-dependencies", {})
unknown = [e for e in sys.argv[2:] if e not in extras]
if unknown:
    sys.exit(f"unknown extras {unknown}; pyproject.toml has {sorted(extras)}")
print("\n".join([*project["dependencies"], *(r for e in sys.argv[2:] for r in extras[e])]))
