"""Finance: subsidy policies as clause-cited data, company-year claim scenarios, the claim engine, packets."""
