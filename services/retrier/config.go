package main

import "notify/pkg/delivery"

// config is everything the retrier reads from the environment.
type config struct {
	delivery.ServiceConfig
}

func loadConfig(getenv func(string) string) (config, error) {
	env := delivery.NewEnv(getenv)
	c := config{ServiceConfig: delivery.LoadServiceConfig(env, delivery.ServiceEnv{
		Name: "retrier", MetricsAddr: "127.0.0.1:9103", WorkersVar: "RETRY_WORKERS", PrefetchVar: "RETRY_PREFETCH",
	})}
	return c, env.Err()
}
