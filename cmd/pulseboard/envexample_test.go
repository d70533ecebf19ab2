package main

import (
	"testing"

	"github.com/joho/godotenv"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/config"
)

// .env.example is what a new user copies to .env: it must parse, and every value in it
// must be accepted by the services that read it.
func TestEnvExampleParsesAndValidates(t *testing.T) {
	t.Parallel()
	vals, err := godotenv.Read("../../.env.example")
	require.NoError(t, err)
	require.Equal(t, "0 0 * * *", vals["DIGEST_CRON"], "values with spaces survive")
	require.Equal(t, "", vals["REDIS_URL"], "inline comments are not values")
	cfg, err := config.Parse[allConfig](config.Env(vals))
	require.NoError(t, err)
	require.NoError(t, cfg.Ingestor.Validate())
	require.NoError(t, cfg.Consumer.Validate())
	require.NoError(t, cfg.Alerter.Validate())
	require.Equal(t, 9100, cfg.AdminPort)
}
