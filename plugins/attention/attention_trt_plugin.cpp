// TensorRT binding of the fused attention kernel: translates TensorRT's tensor descriptions into
// the kernel's AttentionProblem (q, k and v as strided views of the packed projections) and its
// failures into TensorRT's return codes. The library's entry points at the end are what
// IPluginRegistry::loadLibrary looks up; this library registers nothing when merely loaded.
#include "attention_trt_plugin.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include <NvInferVersion.h>

#include "attention_launch.h"
#include "attention_plugin_identity.h"
#include "trt_plugin_logger.h"

namespace levit_attention
{
namespace
{

using levit_plugins::pluginLogger;
using nvinfer1::DataType;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;

constexpr char const* kNumHeadsField = "num_heads";
constexpr char const* kKeyDimField = "key_dim";
constexpr char const* kValueDimField = "val_dim";
constexpr char const* kScaleField = "scale";
constexpr int32_t kSelfAttentionInputs = 2;
constexpr int32_t kDownsampleInputs = 3;

bool isSupportedType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

//! Equal where both are known (TensorRT writes -1 for a size fixed only at run time).
bool agrees(int64_t a, int64_t b) noexcept
{
    return a < 0 || b < 0 || a == b;
}

bool supportedFields(AttentionPluginFields const& f) noexcept
{
    return f.numHeads >= 1 && (f.keyDim == 16 || f.keyDim == 32)
        && (f.valueDim == 32 || f.valueDim == 64 || f.valueDim == 128);
}

void logError(char const* what) noexcept
{
    char message[512];
    std::snprintf(message, sizeof(message), "%s: %s", LEVIT_ATTENTION_PLUGIN_NAME, what);
    pluginLogger().error(message);
}

} // namespace

AttentionPlugin::AttentionPlugin(AttentionPluginFields const& fields)
    : mFields(fields)
{
    refreshSerialFields();
}

AttentionPlugin::AttentionPlugin(AttentionPlugin const& other)
    : mFields(other.mFields)
    , mInputCount(other.mInputCount)
{
    refreshSerialFields(); // the copy must point at its own fields, not at other's
}

void AttentionPlugin::refreshSerialFields() noexcept
{
    mSerialField[0] = nvinfer1::PluginField(kNumHeadsField, &mFields.numHeads, PluginFieldType::kINT32, 1);
    mSerialField[1] = nvinfer1::PluginField(kKeyDimField, &mFields.keyDim, PluginFieldType::kINT32, 1);
    mSerialField[2] = nvinfer1::PluginField(kValueDimField, &mFields.valueDim, PluginFieldType::kINT32, 1);
    mSerialField[3] = nvinfer1::PluginField(kScaleField, &mFields.scale, PluginFieldType::kFLOAT32, 1);
    mSerialFields.nbFields = 4;
    mSerialFields.fields = mSerialField;
}

nvinfer1::IPluginCapability* AttentionPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* AttentionPlugin::clone() noexcept
{
    try
    {
        return new AttentionPlugin(*this);
    }
    catch (std::exception const&)
    {
        logError("out of memory while cloning the plugin");
        return nullptr;
    }
}

char const* AttentionPlugin::getPluginName() const noexcept
{
    return LEVIT_ATTENTION_PLUGIN_NAME;
}

char const* AttentionPlugin::getPluginVersion() const noexcept
{
    return LEVIT_ATTENTION_PLUGIN_VERSION;
}

char const* AttentionPlugin::getPluginNamespace() const noexcept
{
    return LEVIT_ATTENTION_PLUGIN_NAMESPACE;
}

int32_t AttentionPlugin::getNbOutputs() const noexcept
{
    return 1;
}

bool AttentionPlugin::checkDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const noexcept
{
    char message[400];
    int64_t const heads = mFields.numHeads;
    if (nbInputs == kSelfAttentionInputs)
    {
        nvinfer1::Dims const& qkv = inputs[0];
        nvinfer1::Dims const& bias = inputs[1];
        if (qkv.nbDims != 3 || bias.nbDims != 3)
        {
            logError("self-attention takes qkv [B, N, H*(2*key_dim+val_dim)] and bias [H, N, N] (rank 3 each)");
            return false;
        }
        bool const fits = agrees(qkv.d[2], heads * (2 * mFields.keyDim + mFields.valueDim))
            && agrees(bias.d[0], heads) && agrees(bias.d[1], qkv.d[1]) && agrees(bias.d[2], qkv.d[1]);
        if (!fits || qkv.d[1] > kMaxKeys)
        {
            std::snprintf(message, sizeof(message),
                "self-attention with num_heads %d, key_dim %d, val_dim %d needs qkv [B, N, %lld] and bias [%d, N, N] "
                "with N <= %d; got qkv [%lld, %lld, %lld], bias [%lld, %lld, %lld]",
                mFields.numHeads, mFields.keyDim, mFields.valueDim,
                static_cast<long long>(heads * (2 * mFields.keyDim + mFields.valueDim)), mFields.numHeads, kMaxKeys,
                static_cast<long long>(qkv.d[0]), static_cast<long long>(qkv.d[1]), static_cast<long long>(qkv.d[2]),
                static_cast<long long>(bias.d[0]), static_cast<long long>(bias.d[1]),
                static_cast<long long>(bias.d[2]));
            logError(message);
            return false;
        }
        return true;
    }
    if (nbInputs == kDownsampleInputs)
    {
        nvinfer1::Dims const& kv = inputs[0];
        nvinfer1::Dims const& q = inputs[1];
        nvinfer1::Dims const& bias = inputs[2];
        if (kv.nbDims != 3 || q.nbDims != 3 || bias.nbDims != 3)
        {
            logError("downsample attention takes kv [B, Nk, H*(key_dim+val_dim)], q [B, Nq, H*key_dim] and bias "
                     "[H, Nq, Nk] (rank 3 each)");
            return false;
        }
        bool const fits = agrees(kv.d[2], heads * (mFields.keyDim + mFields.valueDim)) && agrees(q.d[0], kv.d[0])
            && agrees(q.d[2], heads * mFields.keyDim) && agrees(bias.d[0], heads) && agrees(bias.d[1], q.d[1])
            && agrees(bias.d[2], kv.d[1]) && kv.d[1] <= kMaxKeys;
        if (!fits)
        {
            std::snprintf(message, sizeof(message),
                "downsample attention with num_heads %d, key_dim %d, val_dim %d needs kv [B, Nk, %lld], q [B, Nq, "
                "%lld] and bias [%d, Nq, Nk] with Nk <= %d; got kv [%lld, %lld, %lld], q [%lld, %lld, %lld], bias "
                "[%lld, %lld, %lld]",
                mFields.numHeads, mFields.keyDim, mFields.valueDim,
                static_cast<long long>(heads * (mFields.keyDim + mFields.valueDim)),
                static_cast<long long>(heads * mFields.keyDim), mFields.numHeads, kMaxKeys,
                static_cast<long long>(kv.d[0]), static_cast<long long>(kv.d[1]), static_cast<long long>(kv.d[2]),
                static_cast<long long>(q.d[0]), static_cast<long long>(q.d[1]), static_cast<long long>(q.d[2]),
                static_cast<long long>(bias.d[0]), static_cast<long long>(bias.d[1]),
                static_cast<long long>(bias.d[2]));
            logError(message);
            return false;
        }
        return true;
    }
    logError("takes 2 inputs (qkv, bias: self-attention) or 3 (kv, q, bias: downsample attention)");
    return false;
}

int32_t AttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbOutputs != 1
        || (nbInputs != kSelfAttentionInputs && nbInputs != kDownsampleInputs))
    {
        logError("expects 2 or 3 inputs and one output");
        return -1;
    }
    nvinfer1::Dims dims[kDownsampleInputs];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (in[i].desc.type != in[0].desc.type || !isSupportedType(in[i].desc.type))
        {
            logError("all inputs must be fp32, or all fp16");
            return -1;
        }
        dims[i] = in[i].desc.dims;
    }
    if (out[0].desc.type != in[0].desc.type)
    {
        logError("the output type must be the inputs' type");
        return -1;
    }
    if (!checkDims(dims, nbInputs))
    {
        return -1;
    }
    mInputCount = nbInputs;
    return 0;
}

int32_t AttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if ((nbInputs != kSelfAttentionInputs && nbInputs != kDownsampleInputs) || nbOutputs != 1
        || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t AttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /* shapeInputs */, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if ((nbInputs != kSelfAttentionInputs && nbInputs != kDownsampleInputs) || nbShapeInputs != 0 || nbOutputs != 1
        || inputs == nullptr || outputs == nullptr)
    {
        logError("expects 2 or 3 data inputs, no shape inputs, one output");
        return -1;
    }
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (inputs[i].nbDims != 3)
        {
            logError("every input must have rank 3");
            return -1;
        }
    }
    if (!supportedFields(mFields))
    {
        logError("num_heads must be >= 1, key_dim 16 or 32, val_dim 32, 64 or 128");
        return -1;
    }
    // Queries come from qkv (self-attention) or q (downsample: input 1); the batch from input 0.
    nvinfer1::DimsExprs const& queries = nbInputs == kSelfAttentionInputs ? inputs[0] : inputs[1];
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = queries.d[1];
    outputs[0].d[2] = exprBuilder.constant(static_cast<int64_t>(mFields.numHeads) * mFields.valueDim);
    return 0;
}

bool AttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || (nbInputs != kSelfAttentionInputs && nbInputs != kDownsampleInputs) || nbOutputs != 1
        || pos < 0 || pos > nbInputs)
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

int32_t AttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbOutputs != 1
        || (nbInputs != kSelfAttentionInputs && nbInputs != kDownsampleInputs))
    {
        logError("expects 2 or 3 inputs and one output");
        return -1;
    }
    nvinfer1::Dims dims[kDownsampleInputs];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    if (!checkDims(dims, nbInputs))
    {
        return -1;
    }
    mInputCount = nbInputs;
    return 0;
}

int32_t AttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /* outputDesc */, void const* const* inputs, void* const* outputs,
    void* /* workspace */, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr || !isSupportedType(inputDesc[0].type)
        || (mInputCount != kSelfAttentionInputs && mInputCount != kDownsampleInputs))
    {
        logError("enqueue before onShapeChange, or with a type other than fp32 or fp16");
        return -1;
    }
    int64_t const elementBytes = inputDesc[0].type == DataType::kHALF ? 2 : 4;
    auto const at = [elementBytes](void const* base, int64_t elements) {
        return static_cast<void const*>(static_cast<char const*>(base) + elements * elementBytes);
    };
    int64_t const heads = mFields.numHeads;
    int64_t const keyDim = mFields.keyDim;
    int64_t const valueDim = mFields.valueDim;
    AttentionProblem problem;
    nvinfer1::Dims const& first = inputDesc[0].dims; // qkv or kv: [B, N or Nk, C]
    if (mInputCount == kSelfAttentionInputs)
    {
        int64_t const perHead = 2 * keyDim + valueDim;
        int64_t const row = heads * perHead;
        problem.q = AttentionOperand{inputs[0], first.d[1] * row, row, perHead};
        problem.k = AttentionOperand{at(inputs[0], keyDim), first.d[1] * row, row, perHead};
        problem.v = AttentionOperand{at(inputs[0], 2 * keyDim), first.d[1] * row, row, perHead};
        problem.queries = static_cast<int32_t>(first.d[1]);
        problem.bias = inputs[1];
    }
    else
    {
        int64_t const perHead = keyDim + valueDim;
        int64_t const row = heads * perHead;
        nvinfer1::Dims const& q = inputDesc[1].dims; // [B, Nq, H*Dq]
        problem.q = AttentionOperand{inputs[1], q.d[1] * heads * keyDim, heads * keyDim, keyDim};
        problem.k = AttentionOperand{inputs[0], first.d[1] * row, row, perHead};
        problem.v = AttentionOperand{at(inputs[0], keyDim), first.d[1] * row, row, perHead};
        problem.queries = static_cast<int32_t>(q.d[1]);
        problem.bias = inputs[2];
    }
    problem.out = outputs[0];
    problem.batch = static_cast<int32_t>(first.d[0]);
    problem.keys = static_cast<int32_t>(first.d[1]);
    problem.heads = mFields.numHeads;
    problem.keyDim = mFields.keyDim;
    problem.valueDim = mFields.valueDim;
    problem.scale = mFields.scale;
    problem.dtype = inputDesc[0].type == DataType::kHALF ? AttentionDType::kFloat16 : AttentionDType::kFloat32;
    AttentionLaunchResult const result = attentionForward(problem, stream);
    if (result.status != AttentionStatus::kSuccess)
    {
        char message[400];
        std::snprintf(message, sizeof(message), "batch %d, heads %d, queries %d, keys %d, key_dim %d, val_dim %d: %s%s%s",
            problem.batch, problem.heads, problem.queries, problem.keys, problem.keyDim, problem.valueDim,
            attentionStatusText(result.status), result.status == AttentionStatus::kLaunchFailed ? ": " : "",
            result.status == AttentionStatus::kLaunchFailed ? cudaGetErrorString(result.cudaStatus) : "");
        logError(message);
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* AttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept
{
    return clone(); // no per-context resources
}

nvinfer1::PluginFieldCollection const* AttentionPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialFields;
}

AttentionPluginCreator::AttentionPluginCreator()
{
    mFieldNames[0] = nvinfer1::PluginField(kNumHeadsField, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames[1] = nvinfer1::PluginField(kKeyDimField, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames[2] = nvinfer1::PluginField(kValueDimField, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames[3] = nvinfer1::PluginField(kScaleField, nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldCollection.nbFields = 4;
    mFieldCollection.fields = mFieldNames;
}

nvinfer1::IPluginV3* AttentionPluginCreator::createPlugin(
    char const* /* name */, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    AttentionPluginFields fields;
    bool seen[4] = {false, false, false, false};
    if (fc != nullptr)
    {
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                continue;
            }
            int32_t* target = nullptr;
            int32_t index = -1;
            if (std::strcmp(field.name, kNumHeadsField) == 0)
            {
                target = &fields.numHeads;
                index = 0;
            }
            else if (std::strcmp(field.name, kKeyDimField) == 0)
            {
                target = &fields.keyDim;
                index = 1;
            }
            else if (std::strcmp(field.name, kValueDimField) == 0)
            {
                target = &fields.valueDim;
                index = 2;
            }
            else if (std::strcmp(field.name, kScaleField) == 0)
            {
                if (field.type != PluginFieldType::kFLOAT32 || field.length != 1 || field.data == nullptr)
                {
                    logError("field 'scale' must be one float32");
                    return nullptr;
                }
                fields.scale = *static_cast<float const*>(field.data);
                seen[3] = true;
                continue;
            }
            else
            {
                continue; // the ONNX parser passes only the fields getFieldNames() lists
            }
            if (field.type != PluginFieldType::kINT32 || field.length != 1 || field.data == nullptr)
            {
                logError("fields 'num_heads', 'key_dim' and 'val_dim' must each be one int32");
                return nullptr;
            }
            *target = *static_cast<int32_t const*>(field.data);
            seen[index] = true;
        }
    }
    if (!(seen[0] && seen[1] && seen[2] && seen[3]))
    {
        logError("needs all four fields: num_heads, key_dim, val_dim (int32) and scale (float32)");
        return nullptr;
    }
    if (!supportedFields(fields))
    {
        char message[200];
        std::snprintf(message, sizeof(message),
            "num_heads %d, key_dim %d, val_dim %d not supported: num_heads >= 1, key_dim 16 or 32, val_dim 32, 64 or "
            "128",
            fields.numHeads, fields.keyDim, fields.valueDim);
        logError(message);
        return nullptr;
    }
    try
    {
        return new AttentionPlugin(fields);
    }
    catch (std::exception const&)
    {
        logError("out of memory while creating the plugin");
        return nullptr;
    }
}

nvinfer1::PluginFieldCollection const* AttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* AttentionPluginCreator::getPluginName() const noexcept
{
    return LEVIT_ATTENTION_PLUGIN_NAME;
}

char const* AttentionPluginCreator::getPluginVersion() const noexcept
{
    return LEVIT_ATTENTION_PLUGIN_VERSION;
}

char const* AttentionPluginCreator::getPluginNamespace() const noexcept
{
    return LEVIT_ATTENTION_PLUGIN_NAMESPACE;
}

} // namespace levit_attention

// Library entry points. TensorRT's loadLibrary calls setLoggerFinder and getCreators (the V3
// creator list); levit_trt/plugins.py reads the other four through ctypes to check that the
// library matches the installed TensorRT and the plugin name the ONNX rewrite writes.
#define LEVIT_EXPORT __attribute__((visibility("default")))

extern "C" LEVIT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    levit_plugins::pluginLogger().setFinder(finder);
}

extern "C" LEVIT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static levit_attention::AttentionPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

extern "C" LEVIT_EXPORT int32_t levit_attention_trt_compiled_major()
{
    return NV_TENSORRT_MAJOR;
}

extern "C" LEVIT_EXPORT char const* levit_attention_plugin_name()
{
    return LEVIT_ATTENTION_PLUGIN_NAME;
}

extern "C" LEVIT_EXPORT char const* levit_attention_plugin_version()
{
    return LEVIT_ATTENTION_PLUGIN_VERSION;
}

extern "C" LEVIT_EXPORT char const* levit_attention_plugin_namespace()
{
    return LEVIT_ATTENTION_PLUGIN_NAMESPACE;
}
