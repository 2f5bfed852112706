// A stand-in for libnvidia-ml.so.1 that tests load through go-nvml.
//
// It implements only the symbols that the gpu package makes go-nvml call
// (nvmlInit_v2, nvmlShutdown, nvmlSystemGetDriverVersion,
// nvmlDeviceGetCount_v2, nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetName,
// nvmlDeviceGetUUID, nvmlDeviceGetMemoryInfo,
// nvmlDeviceGetCudaComputeCapability, and the optional
// nvmlDeviceGetUtilizationRates and nvmlDeviceGetTemperature) plus
// nvmlErrorString, which go-nvml binds when it loads a library. The
// environment drives it:
//
//   FAKE_NVML_GPUS="NVIDIA RTX 3090,24576,20000,8.6,37,61;NVIDIA RTX 3060,12288,11000,8.6"
//       name, total MiB, free MiB, compute capability, and optionally GPU
//       utilisation (%) and temperature (°C) — without them those calls
//       answer "not supported"; read by nvmlInit_v2.
//   FAKE_NVML_INIT_ERROR=9
//       nvmlInit_v2 returns that code and every other function aborts the
//       process, so a caller that goes on after a failed init cannot pass.
//   FAKE_NVML_CALLS=/path/file
//       each call appends the function's name and a newline to the file.
//
// Build: gcc -shared -fPIC -o libnvidia-ml.so.1 fakenvml.c

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_DRIVER_VERSION "999.0-fake"
#define MAX_GPUS 16
#define NAME_LEN 96

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_UNKNOWN 999

typedef int nvmlReturn_t;

typedef struct {
	unsigned long long total;
	unsigned long long free;
	unsigned long long used;
} nvmlMemory_t;

struct nvmlDevice_st {
	char name[NAME_LEN];
	unsigned long long total;
	unsigned long long free;
	int major;
	int minor;
	int util; // -1: not supported
	int temp; // -1: not supported
};

typedef struct {
	unsigned int gpu;
	unsigned int memory;
} nvmlUtilization_t;
typedef struct nvmlDevice_st *nvmlDevice_t;

static struct nvmlDevice_st gpus[MAX_GPUS];
static unsigned int ngpus;
static int initialized; // NVML's init is reference counted

static void record(const char *fn) {
	const char *path = getenv("FAKE_NVML_CALLS");
	if (path == NULL || *path == '\0') {
		return;
	}
	FILE *f = fopen(path, "a");
	if (f == NULL) {
		return;
	}
	fprintf(f, "%s\n", fn);
	fclose(f);
}

// enter records the call and aborts when init is set up to fail: after a
// failed nvmlInit nothing else may be called.
static void enter(const char *fn) {
	record(fn);
	const char *e = getenv("FAKE_NVML_INIT_ERROR");
	if (e != NULL && *e != '\0') {
		fprintf(stderr, "fakenvml: %s called after a failed nvmlInit\n", fn);
		abort();
	}
}

static int copy_string(char *dst, unsigned int len, const char *src) {
	if (dst == NULL) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	if (strlen(src) + 1 > len) {
		return NVML_ERROR_INSUFFICIENT_SIZE;
	}
	strcpy(dst, src);
	return NVML_SUCCESS;
}

static int parse_gpus(const char *spec) {
	ngpus = 0;
	if (spec == NULL || *spec == '\0') {
		return 0;
	}
	char *buf = strdup(spec);
	if (buf == NULL) {
		return -1;
	}
	int rc = 0;
	char *save = NULL;
	for (char *g = strtok_r(buf, ";", &save); g != NULL; g = strtok_r(NULL, ";", &save)) {
		if (ngpus == MAX_GPUS) {
			rc = -1;
			break;
		}
		struct nvmlDevice_st *d = &gpus[ngpus];
		char *f[6];
		char *fsave = NULL;
		int n = 0;
		for (char *p = strtok_r(g, ",", &fsave); p != NULL && n < 7; p = strtok_r(NULL, ",", &fsave)) {
			if (n < 6) {
				f[n] = p;
			}
			n++;
		}
		unsigned long long total_mib, free_mib;
		d->util = -1;
		d->temp = -1;
		if (n == 6 && (sscanf(f[4], "%d", &d->util) != 1 || sscanf(f[5], "%d", &d->temp) != 1)) {
			rc = -1;
			break;
		}
		if ((n != 4 && n != 6) || strlen(f[0]) >= NAME_LEN ||
		    sscanf(f[1], "%llu", &total_mib) != 1 || sscanf(f[2], "%llu", &free_mib) != 1 ||
		    sscanf(f[3], "%d.%d", &d->major, &d->minor) != 2 || free_mib > total_mib) {
			rc = -1;
			break;
		}
		strcpy(d->name, f[0]);
		d->total = total_mib << 20;
		d->free = free_mib << 20;
		ngpus++;
	}
	free(buf);
	return rc;
}

static int valid(nvmlDevice_t d) {
	return d != NULL && d >= gpus && d < gpus + ngpus;
}

nvmlReturn_t nvmlInit_v2(void) {
	record("nvmlInit_v2");
	const char *e = getenv("FAKE_NVML_INIT_ERROR");
	if (e != NULL && *e != '\0') {
		return atoi(e);
	}
	if (initialized == 0 && parse_gpus(getenv("FAKE_NVML_GPUS")) != 0) {
		fprintf(stderr, "fakenvml: bad FAKE_NVML_GPUS %s\n", getenv("FAKE_NVML_GPUS"));
		return NVML_ERROR_UNKNOWN;
	}
	initialized++;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
	enter("nvmlShutdown");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	initialized--;
	return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
	enter("nvmlErrorString");
	switch (r) {
	case NVML_SUCCESS:
		return "Success";
	case NVML_ERROR_UNINITIALIZED:
		return "Uninitialized";
	case NVML_ERROR_INVALID_ARGUMENT:
		return "Invalid Argument";
	case NVML_ERROR_INSUFFICIENT_SIZE:
		return "Insufficient Size";
	default:
		return "Unknown Error";
	}
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
	enter("nvmlSystemGetDriverVersion");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	return copy_string(version, length, FAKE_DRIVER_VERSION);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
	enter("nvmlDeviceGetCount_v2");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (count == NULL) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	*count = ngpus;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
	enter("nvmlDeviceGetHandleByIndex_v2");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (device == NULL || index >= ngpus) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	*device = &gpus[index];
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
	enter("nvmlDeviceGetName");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (!valid(device)) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	return copy_string(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
	enter("nvmlDeviceGetUUID");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (!valid(device)) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	char buf[64];
	snprintf(buf, sizeof buf, "GPU-fa4e0000-0000-0000-0000-%012ld", (long)(device - gpus));
	return copy_string(uuid, length, buf);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
	enter("nvmlDeviceGetMemoryInfo");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (!valid(device) || memory == NULL) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	memory->total = device->total;
	memory->free = device->free;
	memory->used = device->total - device->free;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
	enter("nvmlDeviceGetCudaComputeCapability");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (!valid(device) || major == NULL || minor == NULL) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	*major = device->major;
	*minor = device->minor;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
	enter("nvmlDeviceGetUtilizationRates");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (!valid(device) || utilization == NULL) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	if (device->util < 0) {
		return NVML_ERROR_NOT_SUPPORTED;
	}
	utilization->gpu = device->util;
	utilization->memory = device->util;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp) {
	enter("nvmlDeviceGetTemperature");
	if (initialized == 0) {
		return NVML_ERROR_UNINITIALIZED;
	}
	if (!valid(device) || temp == NULL || sensorType != 0) {
		return NVML_ERROR_INVALID_ARGUMENT;
	}
	if (device->temp < 0) {
		return NVML_ERROR_NOT_SUPPORTED;
	}
	*temp = device->temp;
	return NVML_SUCCESS;
}
