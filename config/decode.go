package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/viper"
)

// parse decodes data with the codec viper uses for format. It keeps keys exactly as
// written: viper itself lowercases every key, which would break `rename` and
// `constants` (column names are case-sensitive) and header names.
func parse(data []byte, format string) (map[string]any, error) {
	dec, err := viper.NewCodecRegistry().Decoder(format)
	if err != nil {
		return nil, err
	}
	raw := map[string]any{}
	if err := dec.Decode(data, raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// decode fills c from the (expanded, key-checked) raw tree, converting values strictly:
// a string where a number belongs is parsed (so `${VAR}` works for numbers) but a
// fractional number is not an integer and a bare number is not a duration. Every
// problem is recorded at its key path.
func decode(raw map[string]any, c *Config, p *problems) { decodeInto(raw, c, "", p) }

// decodeInto decodes raw into result (a pointer to a struct) the way decode does,
// recording problems below the key path prefix.
func decodeInto(raw map[string]any, result any, prefix string, p *problems) {
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook:  convert,
		ErrorUnused: true, // checkKeys removed unknown keys; this is a safety net
		Result:      result,
		TagName:     "mapstructure",
		MatchName:   func(key, field string) bool { return key == field },
	})
	if err != nil {
		p.add("", fmt.Sprintf("internal error: %v", err))
		return
	}
	if err := dec.Decode(raw); err != nil {
		collectDecodeErrors(err, prefix, p)
	}
}

// collectDecodeErrors flattens mapstructure's joined errors into problems.
func collectDecodeErrors(err error, prefix string, p *problems) {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			collectDecodeErrors(e, prefix, p)
		}
		return
	}
	if de, ok := err.(*mapstructure.DecodeError); ok {
		name := mapstructurePath(de.Name())
		if prefix != "" && name != "" {
			name = joinPath(prefix, name)
		} else if name == "" {
			name = prefix
		}
		p.addBad(name, de.Unwrap().Error())
		return
	}
	// mapstructure wraps its joined errors ("decoding failed due to …"): look inside,
	// or every problem after the first would be lost.
	if inner := errors.Unwrap(err); inner != nil {
		collectDecodeErrors(inner, prefix, p)
		return
	}
	p.addBad(prefix, err.Error())
}

// mapstructurePath turns mapstructure's "mapping.rename[City]" into our
// "mapping.rename.City"; list indexes stay in brackets.
func mapstructurePath(name string) string {
	var b strings.Builder
	for name != "" {
		i := strings.IndexByte(name, '[')
		if i < 0 {
			b.WriteString(name)
			break
		}
		b.WriteString(name[:i])
		end := strings.IndexByte(name[i:], ']')
		if end < 0 {
			b.WriteString(name[i:])
			break
		}
		inner := name[i+1 : i+end]
		if _, err := strconv.Atoi(inner); err == nil {
			b.WriteString(name[i : i+end+1])
		} else {
			b.WriteString("." + inner)
		}
		name = name[i+end+1:]
	}
	return b.String()
}

// convert is the decode hook: it accepts the shapes each decoder (YAML, JSON, TOML)
// produces for a field type and refuses the rest with a message for users. Messages
// quote a rejected value only when it is a string, and the loader redacts secrets from
// every message.
func convert(from, to reflect.Type, data any) (any, error) {
	if data == nil {
		return nil, nil
	}
	switch to {
	case durationType:
		return toDuration(data)
	case timeType:
		return toTime(data)
	}
	switch to.Kind() {
	case reflect.Struct:
		if _, ok := data.(map[string]any); !ok {
			return nil, fmt.Errorf("must be a mapping of keys to values, not %s", describe(data))
		}
	case reflect.Map:
		if _, ok := data.(map[string]any); !ok {
			return nil, fmt.Errorf("must be a mapping of keys to values, not %s", describe(data))
		}
	case reflect.Slice:
		if _, ok := data.([]any); !ok {
			return nil, fmt.Errorf("must be a list, not %s", describe(data))
		}
	case reflect.String:
		if _, ok := data.(string); !ok {
			return nil, fmt.Errorf("must be a string, not %s (quote it)", describe(data))
		}
	case reflect.Bool:
		return toBool(data)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return toInt(data, to.Bits())
	case reflect.Float32, reflect.Float64:
		return toFloat(data)
	}
	return data, nil
}

// describe names the kind of a decoded value without showing it.
func describe(data any) string {
	switch data.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return "an integer"
	case float32, float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	case time.Time, toml.LocalDate, toml.LocalDateTime, toml.LocalTime:
		return "a date or time"
	default:
		return fmt.Sprintf("a %T", data)
	}
}

// noUnit is the message for a duration written as a bare number, whatever the key.
const noUnit = "must be a duration with a unit, such as 30s, 5m or 1h: a bare number has no unit"

func toDuration(data any) (any, error) {
	s, ok := data.(string)
	if !ok {
		switch data.(type) {
		case int, int64, int32, uint64, float64:
			return nil, errors.New(noUnit)
		}
		return nil, fmt.Errorf("must be a duration such as 30s, 5m or 1h, not %s", describe(data))
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, numErr := strconv.ParseFloat(strings.TrimSpace(s), 64); numErr == nil {
			return nil, fmt.Errorf("%s (got %q)", noUnit, s)
		}
		return nil, fmt.Errorf("must be a duration such as 30s, 5m or 1h, got %q", s)
	}
	return d, nil
}

func toTime(data any) (any, error) {
	switch v := data.(type) {
	case time.Time:
		return v, nil
	case string:
		t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("must be an RFC 3339 time such as 2025-01-01T00:00:00Z, got %q", v)
		}
		return t, nil
	case toml.LocalDateTime, toml.LocalDate:
		return nil, errors.New("must be an RFC 3339 time with a time zone, such as 2025-01-01T00:00:00Z")
	default:
		return nil, fmt.Errorf("must be an RFC 3339 time such as 2025-01-01T00:00:00Z, not %s", describe(data))
	}
}

func toBool(data any) (any, error) {
	switch v := data.(type) {
	case bool:
		return v, nil
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return nil, fmt.Errorf("must be true or false, got %q", v)
	default:
		return nil, fmt.Errorf("must be true or false, not %s", describe(data))
	}
}

func toInt(data any, bits int) (any, error) {
	var n int64
	switch v := data.(type) {
	case int:
		n = int64(v)
	case int64:
		n = v
	case int32:
		n = int64(v)
	case uint64:
		if v > math.MaxInt64 {
			return nil, errors.New("is too large")
		}
		n = int64(v)
	case float64:
		if v != math.Trunc(v) || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil, errors.New("must be a whole number")
		}
		if v >= math.MaxInt64 || v < math.MinInt64 {
			return nil, errors.New("is too large")
		}
		n = int64(v)
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			if _, numErr := strconv.ParseFloat(strings.TrimSpace(v), 64); numErr != nil {
				return nil, fmt.Errorf("%q is not a number: must be a whole number", v)
			}
			return nil, fmt.Errorf("must be a whole number, got %q", v)
		}
		n = i
	default:
		return nil, fmt.Errorf("must be a whole number, not %s", describe(data))
	}
	if bits < 64 && (n > 1<<(bits-1)-1 || n < -(1<<(bits-1))) {
		return nil, errors.New("is too large")
	}
	return n, nil
}

func toFloat(data any) (any, error) {
	switch v := data.(type) {
	case int:
		return float64(v), nil
	case int64:
		return float64(v), nil
	case uint64:
		return float64(v), nil
	case float64:
		return v, nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", v)
		}
		return f, nil
	default:
		return nil, fmt.Errorf("must be a number, not %s", describe(data))
	}
}
