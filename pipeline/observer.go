package pipeline

// Observer is told about a run's progress as it happens (serve's Prometheus metrics,
// the progress bar). Its methods are called from many goroutines and must not block.
type Observer interface {
	// RowsRead is called as rows of a file are read.
	RowsRead(sync string, rows int64, bytes int64)
	// BatchStarted and BatchDone bracket one Write to a destination; delivered and
	// failed count the messages acknowledged and refused.
	BatchStarted(sync, destination string)
	BatchDone(sync, destination string, delivered, failed int64)
}

// NopObserver observes nothing.
type NopObserver struct{}

func (NopObserver) RowsRead(string, int64, int64)          {}
func (NopObserver) BatchStarted(string, string)            {}
func (NopObserver) BatchDone(string, string, int64, int64) {}

// ProgressObserver is an Observer that also wants the run's totals (the progress bar).
type ProgressObserver interface {
	Observer
	// Planned is called once the files to read are known.
	Planned(sync string, files int, bytes int64)
	// FileRead is called when a file has been read to its end (or given up).
	FileRead(sync, key string)
}
