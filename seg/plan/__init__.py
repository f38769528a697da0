"""Planning for the data, the time budget and the machine: settings, fingerprint, rules, timing, search, the plan."""
