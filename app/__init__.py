"""The application layer: typed run configurations, data, the one training
loop, the run lifecycle behind the entry scripts (run_imp, retrain),
distributed training, reports and exports. Imports every library layer
below it; only the entry scripts, profile/ and experiments/ import it."""
