"""The study store on disk: `journal.py` (the SQLite journal of samples, studies and deployments;
`Store`) and `jobs.py` (the service's and scans' job journal beside it). Where each file lives in a
store is `hivemind.layout`; how their schemas migrate is `hivemind.migrations`."""
