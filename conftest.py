pytest_plugins = ["fixtures.options", "fixtures.session", "fixtures.reporting", "fixtures.html_report"]
