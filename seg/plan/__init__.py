"""Planning for the data, the time budget and the machine: fingerprint, rules, cost model, the plan."""
