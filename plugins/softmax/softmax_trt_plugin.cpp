// TensorRT binding of the softmax kernel: translates TensorRT's tensor descriptions into the
// kernel's (rows, cols, dtype) and its failures into TensorRT's return codes. The library's entry
// points at the end are what IPluginRegistry::loadLibrary looks up; this library registers nothing
// when it is merely loaded, so loadLibrary (or Python's registry.load_library) is the way in.
#include "softmax_trt_plugin.h"

#include <cstdio>
#include <exception>
#include <new>

#include <NvInferVersion.h>

#include "softmax_launch.h"
#include "softmax_plugin_identity.h"
#include "trt_plugin_logger.h"

namespace levit_softmax
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;
using levit_plugins::pluginLogger;

constexpr char const* kAxisField = "axis";
constexpr int32_t kLastAxis = -1;

bool isSupportedType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

} // namespace

SoftmaxPlugin::SoftmaxPlugin(int32_t axis)
    : mAxis(axis)
{
    refreshSerialFields();
}

SoftmaxPlugin::SoftmaxPlugin(SoftmaxPlugin const& other)
    : mAxis(other.mAxis)
{
    refreshSerialFields(); // the copy must point at its own mAxis, not at other's
}

void SoftmaxPlugin::refreshSerialFields() noexcept
{
    mSerialField = nvinfer1::PluginField(kAxisField, &mAxis, PluginFieldType::kINT32, 1);
    mSerialFields.nbFields = 1;
    mSerialFields.fields = &mSerialField;
}

bool SoftmaxPlugin::isLastAxis(int32_t rank) const noexcept
{
    return mAxis == kLastAxis || mAxis == rank - 1;
}

nvinfer1::IPluginCapability* SoftmaxPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* SoftmaxPlugin::clone() noexcept
{
    try
    {
        return new SoftmaxPlugin(*this);
    }
    catch (std::exception const&)
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": out of memory while cloning the plugin");
        return nullptr;
    }
}

char const* SoftmaxPlugin::getPluginName() const noexcept
{
    return LEVIT_SOFTMAX_PLUGIN_NAME;
}

char const* SoftmaxPlugin::getPluginVersion() const noexcept
{
    return LEVIT_SOFTMAX_PLUGIN_VERSION;
}

char const* SoftmaxPlugin::getPluginNamespace() const noexcept
{
    return LEVIT_SOFTMAX_PLUGIN_NAMESPACE;
}

int32_t SoftmaxPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t SoftmaxPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || in == nullptr || out == nullptr)
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": expects exactly one input and one output");
        return -1;
    }
    int32_t const rank = in[0].desc.dims.nbDims;
    if (rank < 2 || !isLastAxis(rank) || in[0].desc.type != out[0].desc.type || !isSupportedType(in[0].desc.type))
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME
            ": needs a rank >= 2 fp32 or fp16 input, the same output type, and axis = -1 (the last axis)");
        return -1;
    }
    return 0;
}

int32_t SoftmaxPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t SoftmaxPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /* shapeInputs */, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /* exprBuilder */) noexcept
{
    if (nbInputs != 1 || nbShapeInputs != 0 || nbOutputs != 1 || inputs == nullptr || outputs == nullptr)
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": expects one data input, no shape inputs, one output");
        return -1;
    }
    if (inputs[0].nbDims < 2 || !isLastAxis(inputs[0].nbDims))
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": the input must have rank >= 2 and axis must be the last");
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool SoftmaxPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    return pos == 0 ? isSupportedType(desc.type) : desc.type == inOut[0].desc.type;
}

int32_t SoftmaxPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || in == nullptr || out == nullptr || in[0].dims.nbDims < 2
        || !isLastAxis(in[0].dims.nbDims))
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": unsupported input shape (rank must be >= 2)");
        return -1;
    }
    return 0;
}

int32_t SoftmaxPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /* outputDesc */, void const* const* inputs, void* const* outputs,
    void* /* workspace */, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims const& dims = inputDesc[0].dims;
    if (dims.nbDims < 1)
    {
        return -1;
    }
    int64_t const cols = dims.d[dims.nbDims - 1];
    int64_t rows = 1;
    for (int32_t i = 0; i < dims.nbDims - 1; ++i)
    {
        rows *= dims.d[i];
    }
    if (!isSupportedType(inputDesc[0].type))
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": enqueue got a type other than fp32 or fp16");
        return -1;
    }
    SoftmaxDType const dtype
        = inputDesc[0].type == DataType::kHALF ? SoftmaxDType::kFloat16 : SoftmaxDType::kFloat32;
    cudaError_t const status = softmaxLastAxis(inputs[0], outputs[0], rows, cols, dtype, stream);
    if (status != cudaSuccess)
    {
        char message[256];
        std::snprintf(message, sizeof(message), "%s: kernel launch failed: %s", LEVIT_SOFTMAX_PLUGIN_NAME,
            cudaGetErrorString(status));
        pluginLogger().error(message);
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* SoftmaxPlugin::attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept
{
    return clone(); // no per-context resources
}

nvinfer1::PluginFieldCollection const* SoftmaxPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialFields;
}

SoftmaxPluginCreator::SoftmaxPluginCreator()
    : mFieldName(kAxisField, nullptr, PluginFieldType::kINT32, 1)
{
    mFieldNames.nbFields = 1;
    mFieldNames.fields = &mFieldName;
}

nvinfer1::IPluginV3* SoftmaxPluginCreator::createPlugin(
    char const* /* name */, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    int32_t axis = kLastAxis;
    if (fc != nullptr)
    {
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& field = fc->fields[i];
            if (field.name == nullptr || std::string(field.name) != kAxisField)
            {
                continue; // the ONNX parser passes only the fields getFieldNames() lists
            }
            if (field.type != PluginFieldType::kINT32 || field.length != 1 || field.data == nullptr)
            {
                pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": field 'axis' must be one int32");
                return nullptr;
            }
            axis = *static_cast<int32_t const*>(field.data);
        }
    }
    if (axis < kLastAxis)
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": axis must be -1 or the index of the last axis");
        return nullptr;
    }
    try
    {
        return new SoftmaxPlugin(axis);
    }
    catch (std::exception const&)
    {
        pluginLogger().error(LEVIT_SOFTMAX_PLUGIN_NAME ": out of memory while creating the plugin");
        return nullptr;
    }
}

nvinfer1::PluginFieldCollection const* SoftmaxPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

char const* SoftmaxPluginCreator::getPluginName() const noexcept
{
    return LEVIT_SOFTMAX_PLUGIN_NAME;
}

char const* SoftmaxPluginCreator::getPluginVersion() const noexcept
{
    return LEVIT_SOFTMAX_PLUGIN_VERSION;
}

char const* SoftmaxPluginCreator::getPluginNamespace() const noexcept
{
    return LEVIT_SOFTMAX_PLUGIN_NAMESPACE;
}

} // namespace levit_softmax

// Library entry points. TensorRT's loadLibrary calls setLoggerFinder and getCreators (the V3
// creator list); levit_trt/plugins.py reads the other three through ctypes to check that the
// library matches the installed TensorRT and the plugin name the ONNX rewrite writes.
#define LEVIT_EXPORT __attribute__((visibility("default")))

extern "C" LEVIT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    levit_plugins::pluginLogger().setFinder(finder);
}

extern "C" LEVIT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static levit_softmax::SoftmaxPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

extern "C" LEVIT_EXPORT int32_t levit_softmax_trt_compiled_major()
{
    return NV_TENSORRT_MAJOR;
}

extern "C" LEVIT_EXPORT char const* levit_softmax_plugin_name()
{
    return LEVIT_SOFTMAX_PLUGIN_NAME;
}

extern "C" LEVIT_EXPORT char const* levit_softmax_plugin_version()
{
    return LEVIT_SOFTMAX_PLUGIN_VERSION;
}

extern "C" LEVIT_EXPORT char const* levit_softmax_plugin_namespace()
{
    return LEVIT_SOFTMAX_PLUGIN_NAMESPACE;
}
