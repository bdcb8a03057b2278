package main

import "notify/pkg/delivery"

// config is everything the sender reads from the environment.
type config struct {
	delivery.ServiceConfig
	ChunkConcurrency int // SEND_CHUNK_CONCURRENCY: chunks of one notification in flight
}

func loadConfig(getenv func(string) string) (config, error) {
	env := delivery.NewEnv(getenv)
	c := config{ServiceConfig: delivery.LoadServiceConfig(env, delivery.ServiceEnv{
		Name: "sender", MetricsAddr: "127.0.0.1:9102", WorkersVar: "SEND_WORKERS", PrefetchVar: "SEND_PREFETCH",
	})}
	c.ChunkConcurrency = env.Int("SEND_CHUNK_CONCURRENCY", 8, 1, 64)
	return c, env.Err()
}
