# Every kata's tests use the harness plugin: --impl, kata numbers, TODO lines, the summary.
pytest_plugins = ["harness.plugin"]
